// The original tutorial's Go server (../shared/seed), as the tutorial gives it, for the benchmark.
// Changes, each marked below: two needed to build it with today's Debian packages, and one so the
// benchmark can choose the port (the default stays the tutorial's :50051):
//   - github.com/golang/protobuf/ptypes/wrappers became google.golang.org/protobuf/types/known/wrapperspb;
//   - "log" is imported (the tutorial's main uses log.Fatalf without importing it);
//   - an optional first argument overrides the listen address.
package main

import (
	"context"
	"log" // added: used by main
	"net"
	"os" // added: the benchmark passes the address

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	wrapper "google.golang.org/protobuf/types/known/wrapperspb" // was github.com/golang/protobuf/ptypes/wrappers
	pb "order_management"
)

const (
	port = ":50051" //服务端将在50051端口监听客户端请求
)

func initSampleData() {
	//虚拟一些数据以便客户端进行请求
	orderMap["102"] = pb.Order{Id: "102", Items: []string{"Google Pixel 3A", "Mac Book Pro"}, Destination: "Mountain View, CA", Price: 1800.00}
	orderMap["103"] = pb.Order{Id: "103", Items: []string{"Apple Watch S4"}, Destination: "San Jose, CA", Price: 400.00}
	orderMap["104"] = pb.Order{Id: "104", Items: []string{"Google Home Mini", "Google Nest Hub"}, Destination: "Mountain View, CA", Price: 400.00}
	orderMap["105"] = pb.Order{Id: "105", Items: []string{"Amazon Echo"}, Destination: "San Jose, CA", Price: 30.00}
	orderMap["106"] = pb.Order{Id: "106", Items: []string{"Amazon Echo", "Apple iPhone XS"}, Destination: "Mountain View, CA", Price: 300.00}
}

var orderMap = make(map[string]pb.Order)

type server struct { //server就是要实现接口getOrder的实例
	orderMap map[string]*pb.Order
}

func (s *server) GetOrder(ctx context.Context,
	orderId *wrapper.StringValue) (*pb.Order, error) {
	//根据客户端发来ID查找订单数据
	ord, exists := orderMap[orderId.Value]
	if exists {
		return &ord, status.New(codes.OK, "").Err()
	}

	return nil, status.Errorf(codes.NotFound, "Order does not exist. : ", orderId)
}

func main() {
	initSampleData()
	// The benchmark passes its own address; the tutorial's is the default.
	addr := port
	if len(os.Args) > 1 {
		addr = os.Args[1]
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatalf("failed to listen: %v", err)
	}

	s := grpc.NewServer()
	pb.RegisterOrderManagementServer(s, &server{})
	if err = s.Serve(lis); err != nil {
		log.Fatalf("failed to serve: %v", err)
	}
}
